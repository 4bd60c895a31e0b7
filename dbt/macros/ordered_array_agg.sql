{#- An array of `expression` ordered by `order_by`, one per group. -#}
{% macro ordered_array_agg(expression, order_by) -%}
    {{ return(adapter.dispatch('ordered_array_agg', 'postmodern')(expression, order_by)) }}
{%- endmacro %}

{% macro default__ordered_array_agg(expression, order_by) -%}
    list({{ expression }} order by {{ order_by }})
{%- endmacro %}

{% macro snowflake__ordered_array_agg(expression, order_by) -%}
    array_agg({{ expression }}) within group (order by {{ order_by }})
{%- endmacro %}
