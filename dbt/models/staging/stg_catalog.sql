with source as (

    select * from {{ source('coveo', 'catalog_raw') }}

),

latest as (

    select *
    from source
    where product_sku_hash is not null
    qualify row_number() over (
        partition by api_key, lower(trim(product_sku_hash)) order by etl_timestamp desc, etl_id
    ) = 1

),

final as (

    select
        api_key,
        lower(trim(product_sku_hash)) as product_sku,
        nullif(category_hash, '') as category_path,
        {{ category_level('category_hash', 1) }} as top_category,
        try_cast(price_bucket as double) as price_bucket,
        nullif(description_vector, '') as description_vector,
        nullif(image_vector, '') as image_vector,
        etl_id
    from latest

)

select * from final
